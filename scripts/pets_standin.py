"""Build an Oxford-IIIT Pet stand-in (PETS layout) from an extracted CIFAR-10 folder.

PETS itself cannot be downloaded on an offline machine; its layout can be imitated:
images/<Breed>_<n>.jpg with cat breeds capitalised and dog breeds in lower case, plus
annotations/. CIFAR-10's cats and dogs become four "breeds" each.

    python scripts/pets_standin.py ../data/cifar10 /tmp/pets_standin --per-class 200
    trainer fit pets --data /tmp/pets_standin --no-pretrained
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

CAT_BREEDS = ["Persian", "Siamese", "Bengal", "Ragdoll"]
DOG_BREEDS = ["beagle", "pug", "boxer", "samoyed"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cifar10", type=Path, help="extracted cifar10/ folder (train/cat, train/dog)")
    parser.add_argument("out", type=Path, help="folder to create")
    parser.add_argument("--per-class", type=int, default=200, help="images taken from each of cat and dog")
    parser.add_argument("--photo-size", type=int, default=0,
                        help="upscale to this width (3:4, JPEG) to imitate PETS' ~500x375 photos; 0 keeps 32x32")
    args = parser.parse_args()
    images = args.out / "images"
    images.mkdir(parents=True, exist_ok=False)
    (args.out / "annotations").mkdir()
    for animal, breeds in (("cat", CAT_BREEDS), ("dog", DOG_BREEDS)):
        sources = sorted((args.cifar10 / "train" / animal).iterdir())[: args.per_class]
        for i, source in enumerate(sources):
            target = images / f"{breeds[i % len(breeds)]}_{i}.jpg"
            if args.photo_size:
                from PIL import Image

                with Image.open(source) as image:
                    size = (args.photo_size, args.photo_size * 3 // 4)
                    image.convert("RGB").resize(size, Image.BICUBIC).save(target, quality=90)
            else:
                shutil.copy(source, target)
    print(f"{args.out}: {len(list(images.iterdir()))} images")


if __name__ == "__main__":
    main()

"""Find (or fetch) a recipe's data, check its layout, and build its DataLoaders.

Lookup order, first hit wins, so a folder that is already there never needs the network:
  1. --data PATH (a folder, or a .tgz/.tar/.zip archive, extracted once into the data root), or --data URL
     (an http(s):// archive downloaded once by fastai's download_url into $FASTAI_HOME/archive/, then
     extracted as a local archive is; --data-sha256 checks it)
  2. the data root: $TRAINER_DATA, else ./datasets, holding <recipe folder>/
  3. fastai's cache: $FASTAI_HOME/data/<recipe folder> (where untar_data extracts)
  4. fastai's untar_data download (skipped when TRAINER_OFFLINE=1)
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable
from urllib.parse import unquote, urlsplit

from filelock import FileLock

from trainer.errors import BadInput
from trainer.data.archives import extract_tar, extract_zip
from trainer.files import write_failure
from trainer.options import NO_ARCHIVE_TO_CHECK
from trainer.data.locations import (IMAGE_EXTENSIONS, data_root, fastai_archive_dir, fastai_data_dir, is_url,
                                     offline)
from trainer.recipes import Recipe

ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip", ".tar.bz2", ".tar.xz")
DOWNLOAD_TIMEOUT = 60  # seconds a download may wait for the server (to connect, or for its next bytes)


def local_candidates(recipe: Recipe) -> list[Path]:
    if recipe.folder is None:
        return []
    return [data_root() / recipe.folder, fastai_data_dir() / recipe.folder]


def find_local(recipe: Recipe) -> Path | None:
    """The first local copy of the recipe's data, whatever its state."""
    return next((p for p in local_candidates(recipe) if p.is_dir()), None)


def locate(recipe: Recipe, data: str | None, *, sha256: str | None = None, note: Callable[[str], None] | None = None,
           progress: Callable | None = None) -> Path:
    """The folder holding the recipe's data, in the recipe's layout (checked).

    `sha256` (--data-sha256): the digest the --data URL's download, or the --data archive, must have. `note`
    hears what a download does; `progress` (a publish callable, trainer.progress) its count of bytes.

    One process at a time: the ranks of a distributed job (or two runs started together) would
    otherwise all download or extract the same data at once; the first does it, the others wait for
    the lock and then find it in place."""
    with exclusive(recipe.name):
        return _locate(recipe, data, sha256, note or (lambda text: None), progress)


@contextlib.contextmanager
def exclusive(name: str):
    """A lock shared by every process on this machine (filelock: flock on POSIX, msvcrt on Windows)."""
    folder = Path(tempfile.gettempdir()) / "trainer-locks"
    try:
        folder.mkdir(exist_ok=True)
        lock = FileLock(folder / f"{name}.lock")
        lock.acquire()
    except OSError:  # no usable temporary folder (or another user's lock file): go on unlocked, as before
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _locate(recipe: Recipe, data: str | None, sha256: str | None = None,
            note: Callable[[str], None] = lambda text: None, progress: Callable | None = None) -> Path:
    if sha256 and not data:
        raise BadInput(NO_ARCHIVE_TO_CHECK)
    if data:
        given = extract_download(data, sha256, note, progress) if is_url(data) else Path(data).expanduser()
        if not given.exists():
            raise BadInput(f"--data {data}: no such file or folder; give an extracted dataset folder, "
                           f"a .tgz/.tar/.zip archive or an http(s):// URL of one (layout: {recipe.layout})")
        if sha256 and not given.is_file() and not is_url(data):
            raise BadInput(f"--data-sha256 checks an archive, and --data {data} is a folder: drop --data-sha256, "
                           f"or pass the archive (or its URL)")
        if given.is_file():
            if sha256:
                check_digest(given, sha256, str(given), "check the file, or the digest you were given")
            given = extract_archive(given)
        if recipe.made_from and not any(given.iterdir()):  # an empty folder: write the data there
            return make(recipe, given)
        return dataset_root(recipe, given)
    local = find_local(recipe)
    if local is not None:
        return dataset_root(recipe, local)
    if recipe.made_from:
        return make(recipe, data_root() / recipe.folder)
    return dataset_root(recipe, download(recipe, progress))


def download(recipe: Recipe, progress: Callable | None = None) -> Path:
    """fastai's untar_data of the recipe's URL, its download counted as the "download" step (ours, not
    fastprogress's bar on stdout: download_url below stands in for fastdownload's while it runs)."""
    fixes = (f"put the extracted data at {data_root() / recipe.folder} or {fastai_data_dir() / recipe.folder} "
             f"(FASTAI_HOME), or pass --data PATH; see datasets/README.md")
    if offline():
        raise BadInput(f"no local data for '{recipe.name}' and TRAINER_OFFLINE is set: {fixes}")
    import fastdownload.core
    from fastai.data.external import URLs, untar_data

    url = getattr(URLs, recipe.url)
    theirs = fastdownload.core.download_url  # what untar_data's FastDownload calls (download_and_check)
    fastdownload.core.download_url = lambda address, dest=None, **_: download_url(address, dest, progress=progress)
    try:
        return Path(untar_data(url))
    except Exception as e:  # network, DNS, checksum, disk: all end the same way for the user
        raise BadInput(f"could not download {url} ({type(e).__name__}: {e}); {fixes}") from None
    finally:
        fastdownload.core.download_url = theirs


def dataset_root(recipe: Recipe, path: Path) -> Path:
    """`path` itself, or the dataset folder inside it (an archive's top folder, or <recipe folder>/)."""
    problems = layout_problems(recipe, path)
    if not problems:
        return path
    inner = [path / recipe.folder] if recipe.folder else []
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]
    if len(subdirs) == 1:
        inner.append(subdirs[0])
    for candidate in inner:
        if candidate.is_dir() and not layout_problems(recipe, candidate):
            return candidate
    raise BadInput(f"{path} is not in the '{recipe.name}' layout: {problems[0]}; expected {recipe.layout}; "
                   f"point --data at the folder that holds it")


def has_images(folder: Path) -> bool:
    return any(f.suffix.lower() in IMAGE_EXTENSIONS for f in folder.iterdir() if f.is_file())


def class_folders(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".") and has_images(d))


def layout_problems(recipe: Recipe, path: Path) -> list[str]:
    """What is wrong with `path` for this recipe, most important first; [] when it is usable."""
    if not path.is_dir():
        return [f"{path} is not a folder"]
    if recipe.check == "splits":
        return split_problems(path, *recipe.splits)
    if recipe.check == "pets":
        return pets_problems(path, breeds=recipe.name == "pets_breeds")
    if recipe.check in ("labels", "names"):  # --labels CSV or --label-re: images anywhere under --data
        from trainer.data.labels import layout_problems as labelled_problems

        return labelled_problems(path, recipe.labels_file)
    valid = next((v for v in ("valid", "test") if (path / v).is_dir()), None)
    if (path / "train").is_dir() and valid:
        return split_problems(path, "train", valid)
    return classes_problems(path / "train" if (path / "train").is_dir() else path)


def split_problems(path: Path, train: str, valid: str) -> list[str]:
    for split in (train, valid):
        if not (path / split).is_dir():
            return [f"no '{split}/' folder in {path}"]
    problems = classes_problems(path / train) or unnamed_classes(path / valid)
    if not problems and not class_folders(path / valid):
        problems.append(f"'{valid}/' in {path} has no class folders with images")
    trained = {d.name for d in class_folders(path / train)}
    extra = sorted(d.name for d in class_folders(path / valid) if d.name not in trained)
    if not problems and extra:  # fastai's vocab comes from the training set: a KeyError otherwise
        problems.append(f"class '{extra[0]}' is in '{valid}/' but not in '{train}/' of {path} (the model cannot "
                        f"learn a class it never trains on): add training images of it, or remove "
                        f"{path / valid / extra[0]}")
    return problems


def unnamed_classes(path: Path) -> list[str]:
    """A folder of images whose name cannot be a class (only dots or spaces, as '...'): named, not dropped."""
    bad = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.strip(". \t\n\r\v\f") and has_images(d))
    return [f"class folder '{bad[0]}' in {path} holds images but cannot be a class name (only dots or spaces): "
            f"rename it"] if bad else []


def classes_problems(path: Path) -> list[str]:
    if unnamed := unnamed_classes(path):
        return unnamed
    classes = class_folders(path)
    empty = [d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith(".") and d not in classes]
    if empty:
        return [f"class folder '{empty[0]}' in {path} has no images"]
    if len(classes) < 2:
        return [f"{path} needs at least 2 class folders with images, found {len(classes)}"]
    return []


def pets_problems(path: Path, breeds: bool) -> list[str]:
    from trainer.recipes import breed_of

    images = path / "images"
    if not images.is_dir():
        return [f"no 'images/' folder in {path}"]
    names = [f.name for f in images.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS]
    if not names:
        return [f"'images/' in {path} holds no images"]
    if breeds:
        labels = {breed_of(n) for n in names} - {None}
        if len(labels) < 2:
            return [f"'images/' in {path} needs files named <breed>_<n>.jpg of at least 2 breeds"]
    elif len({n[0].isupper() for n in names}) < 2:
        return [f"'images/' in {path} needs both cats (Capitalised_1.jpg) and dogs (lower_1.jpg)"]
    return []


def extract_archive(archive: Path) -> Path:
    """Extract once into <data root>/.extracted/<name>-<hash>/; later runs reuse it.

    Extraction goes to a temporary folder renamed into place, so a crash or a second
    process never leaves (or sees) a half-extracted dataset.
    """
    if not archive.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise BadInput(f"--data {archive} is a file but not a .tgz/.tar/.zip archive; "
                       f"give an archive or an extracted folder")
    target = extracted_target(archive)
    stem = archive_stem(archive.name)
    if target.is_dir():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{stem[:100]}-", dir=target.parent))
    except OSError as e:
        raise BadInput(f"--data {archive}: cannot extract into {target.parent} ({e.strerror}); set TRAINER_DATA to "
                       f"a writable folder, or extract the archive yourself and pass the folder") from None
    extract_members(archive, tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def archive_stem(name: str) -> str:
    """An archive's name without its archive suffix (flowers.tar.gz: flowers)."""
    return next(name[: -len(s)] for s in ARCHIVE_SUFFIXES if name.lower().endswith(s))


def extracted_target(archive: Path) -> Path:
    """Where extract_archive puts `archive`: <data root>/.extracted/<stem>-<hash of its path, size and mtime>."""
    stat = archive.stat()
    key = hashlib.sha1(f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    return data_root() / ".extracted" / f"{archive_stem(archive.name)[:100]}-{key}"  # cut short: a long name fits


def extract_members(archive: Path, into: Path) -> None:
    """Extract `archive` into the folder `into` within the limits (archives.py): a bomb, a member pointing
    outside, a damaged file or a full disk is one line, and `into` is removed."""
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            extract_zip(archive, into, refuse_outside_members)
        else:
            extract_tar(archive, into, refuse_outside_members)
    except tarfile.FilterError as e:  # links or devices pointing outside, which names alone do not show
        shutil.rmtree(into, ignore_errors=True)
        raise outside_member(archive, str(e)) from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        shutil.rmtree(into, ignore_errors=True)
        if isinstance(e, OSError) and (failure := write_failure(Path(e.filename or into), e)):
            raise BadInput(f"--data {archive}: {failure}; nothing was kept: free space, or set TRAINER_DATA "
                           f"elsewhere") from None
        raise BadInput(f"--data {archive} could not be extracted ({e}); check the file or extract it yourself") from None
    except BaseException:
        shutil.rmtree(into, ignore_errors=True)
        raise


def refuse_outside_members(archive: Path, names: list[str]) -> None:
    for member in names:
        parts = Path(member).parts
        if member.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):  # C:\ too
            raise outside_member(archive, f"'{member}'")


def outside_member(archive: Path, detail: str) -> BadInput:
    return BadInput(f"--data {archive}: refusing an archive member that points outside the archive ({detail}); "
                    f"extract it yourself if you trust it")


# --data URL: an archive on a web server, downloaded by fastai's machinery (fastdownload's download_url: a .part
# file renamed into place, fastcore's urlretrieve refusing a body shorter than its Content-Length; our progress
# instead of fastprogress's bar) into fastai's archive folder, then extracted, checked and reused exactly as a local archive is.

def download_path(url: str) -> Path:
    """Where `url` is downloaded: $FASTAI_HOME/archive/<stem>-<hash of the URL><suffix> (untar_data's folder; the
    hash keeps two URLs of the same file name apart)."""
    parts = urlsplit(url)
    name = PurePosixPath(unquote(parts.path)).name
    if not parts.hostname or not name.lower().endswith(ARCHIVE_SUFFIXES):
        raise BadInput(f"--data {url}: a URL must name a .tgz/.tar.gz/.tar/.zip archive (e.g. "
                       f"https://example.com/flowers.tgz); download other addresses yourself and pass the file")
    stem = archive_stem(name)
    key = hashlib.sha1(url.encode()).hexdigest()[:10]
    return fastai_archive_dir() / f"{stem[:100]}-{key}{name[len(stem):].lower()}"


def extract_download(url: str, sha256: str | None, note: Callable[[str], None], progress: Callable | None) -> Path:
    """`url`'s archive, downloaded once (or found), checked and extracted as a local archive is."""
    with exclusive("download-" + hashlib.sha1(url.encode()).hexdigest()[:10]):  # two recipes, one URL
        archive = fetch(url, sha256, note, progress)
        try:
            return extract_archive(archive)
        except BadInput as e:
            if sha256:  # the very file expected: keep it (a limit to raise, a full disk to free)
                raise
            discard(archive)  # most likely cut short by a server that sent no length: fetched again next time
            raise BadInput(f"{e} (downloaded from {url}: removed, so the next run downloads it again)") from None


def fetch(url: str, sha256: str | None, note: Callable[[str], None], progress: Callable | None) -> Path:
    """The archive of `url` in fastai's archive folder: the copy already there (no network) when it matches
    `sha256`, else a fresh download, checked."""
    archive = download_path(url)
    if archive.is_file():
        if not sha256 or known_digest(archive) == sha256.lower():
            return archive
        if offline():
            check_digest(archive, sha256, url, "the copy downloaded before was removed; TRAINER_OFFLINE is set, so "
                                               "it is not downloaded again: check the digest", on_mismatch=discard)
        note(f"{archive} (from {url}) does not match --data-sha256: downloading it again")
        discard(archive)
    if offline():
        raise BadInput(f"--data {url} is not downloaded yet ({archive} is missing) and TRAINER_OFFLINE is set: "
                       f"unset TRAINER_OFFLINE to download it, or download the archive yourself and pass the file")
    note(f"downloading {url} into {archive.parent}")
    download_archive(url, archive, progress)
    if sha256:
        check_digest(archive, sha256, url, "check the URL and the digest (sha256sum prints it); the download "
                                           "was removed", on_mismatch=discard)
    return archive


def download_url(url: str, dest: Path, timeout: float | None = None, progress: Callable | None = None) -> Path:
    """fastdownload's download_url (fastcore's urlsave into a .part file, renamed into place), its bytes counted as
    the "download" step (trainer.progress: a bar on stderr, or one line) instead of fastprogress's bar on stdout."""
    from fastcore.net import urldest, urlsave

    from trainer.progress import step

    dest = urldest(url, dest)
    tmp = dest.with_name(dest.name + ".part")
    with step(progress, "download", None, "bytes") as downloading:
        def hook(count: int = 1, size: int = 1, total: int | None = None) -> None:  # urlretrieve's reporthook
            if total and total > 0:
                downloading.total = total
            downloading.advance(count * size - downloading.done)

        urlsave(url, tmp, reporthook=hook, timeout=timeout)
        downloading.done = tmp.stat().st_size
    return tmp.replace(dest)


def download_archive(url: str, archive: Path, progress: Callable | None) -> None:
    """download_url into `archive`, atomically: nothing of a failed download is left."""
    name_short_reads()
    part = archive.with_name(archive.name + ".part")  # download_url's temporary name
    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
        download_url(url, archive, timeout=DOWNLOAD_TIMEOUT, progress=progress)
    except BaseException as e:
        part.unlink(missing_ok=True)
        if not isinstance(e, Exception):
            raise
        if failure := write_failure(part, e):
            raise BadInput(f"--data {url}: {failure}; nothing was kept: free space, or set FASTAI_HOME "
                           f"elsewhere") from None
        raise BadInput(f"--data {url}: the download failed ({download_cause(e)}); nothing was kept: check the "
                       f"address and the network, then run again") from None


def name_short_reads() -> None:
    """fastcore.net's urlretrieve (under download_url) refuses a body shorter than its Content-Length, a connection
    dropped halfway, by raising ContentTooShortError: a name fastcore 2.2 never imports, so it is a NameError
    there. Give fastcore the name, so a short read is the error it means to be."""
    import fastcore.net
    from urllib.error import ContentTooShortError

    if not hasattr(fastcore.net, "ContentTooShortError"):
        fastcore.net.ContentTooShortError = ContentTooShortError


def download_cause(e: Exception) -> str:
    """What went wrong with a download, in one line: an HTTP status, a refused or dropped connection, DNS."""
    from urllib.error import ContentTooShortError, HTTPError, URLError

    if isinstance(e, HTTPError):
        text = f"HTTP {e.code} {e.reason}"
    elif isinstance(e, ContentTooShortError):
        text = f"the connection closed early: {e.reason}"
    elif isinstance(e, URLError):
        text = str(e.reason)
    else:
        text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    lines = text.strip().splitlines() or [type(e).__name__]  # fastcore adds the error page's body below the status
    return " ".join(lines[0].split())[:300]


def check_digest(archive: Path, sha256: str, shown: str, fix: str, on_mismatch=None) -> None:
    actual = known_digest(archive)
    if actual != sha256.lower():
        if on_mismatch:
            on_mismatch(archive)
        raise BadInput(f"--data {shown}: its SHA-256 is {actual}, not the {sha256.lower()} --data-sha256 expects; "
                       f"{fix}")


def known_digest(archive: Path) -> str:
    """The archive's SHA-256, read once: a checked download keeps it beside itself (<archive>.sha256, with the size
    and mtime it is of), so a large archive is not hashed again on every run."""
    record = archive.with_name(archive.name + ".sha256")
    stat = archive.stat()
    stamp = f"{stat.st_size} {stat.st_mtime_ns}"
    try:
        digest, kept = record.read_text().split(" ", 1)
        if kept.strip() == stamp:
            return digest
    except (OSError, ValueError):
        pass
    digest = file_sha256(archive)
    if archive.parent == fastai_archive_dir():  # a download (never written beside the user's own files)
        with contextlib.suppress(OSError):
            record.write_text(f"{digest} {stamp}\n")
    return digest


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def discard(archive: Path) -> None:
    """A download that is not to be used: the archive, its digest record and its extracted copy."""
    with contextlib.suppress(OSError):
        shutil.rmtree(extracted_target(archive), ignore_errors=True)
    for path in (archive, archive.with_name(archive.name + ".sha256")):
        path.unlink(missing_ok=True)


def make(recipe: Recipe, target: Path) -> Path:
    """The data of a recipe that this package writes itself (`made_from`), at `target`."""
    writers = {"scikit-learn": write_digits}
    return writers[recipe.made_from](target)


def write_digits(target: Path) -> Path:
    """scikit-learn's 8x8 digits, upscaled to MNIST's 28x28 PNGs in MNIST's layout.

    A fixed split: every fifth image is in testing/ (360 of 1,797).
    """
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=target.parent))
    except OSError as e:
        raise BadInput(f"cannot write the digits data into {target.parent} ({e.strerror}); set TRAINER_DATA to a "
                       f"writable folder, or pass --data PATH") from None
    for i, (pixels, label) in enumerate(zip(bunch.images, bunch.target)):
        split = "testing" if i % 5 == 0 else "training"
        folder = tmp / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((pixels * (255 / 16)).astype(np.uint8), mode="L")
        image.resize((28, 28), Image.BILINEAR).save(folder / f"{i}.png")
    try:
        if target.is_dir():
            target.rmdir()  # an empty folder given with --data
        tmp.rename(target)
    except OSError:  # another process (a second run, a distributed rank) wrote it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target




def download_recipe(name: str, progress: Callable | None = None) -> Path:
    """`trainer download`: the recipe's data, found locally or fetched (`progress` hears the "download" step)."""
    from trainer.recipes import get_recipe

    recipe = get_recipe(name)
    if recipe.check == "folder":
        raise BadInput("recipe 'folder' uses your own images (--data): there is nothing to download")
    return locate(recipe, None, progress=progress)

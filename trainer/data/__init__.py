"""Datasets: where they are (locations, source), what is in them (images), how they are loaded (loaders) and
cached (cache). `locations` and `source` import nothing heavy: `trainer datasets` reads them."""

"""Run directories: the schema (rundir), the store (store), the split file (split), the listing (listing) and
report.html (report). Nothing here imports torch or fastai at module level: listings stay instant."""

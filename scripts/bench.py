"""The benchmark lives in the package (`trainer bench`, `python -m trainer.bench`); this path still works."""

from trainer.bench import main

if __name__ == "__main__":
    main()

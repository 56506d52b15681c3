"""trainer: fastai's image classification recipes as one reliable command, and as a library.

    import trainer
    run = trainer.fit("digits", epochs=1)
    trainer.load(run).predict(["some.png"])

`fit`, `lr_find` and `load` take the options `trainer fit` takes, by the same names (see trainer.api).
Importing trainer imports nothing heavy: torch and fastai load when a function is called.
"""

__version__ = "0.1.0"

__all__ = ["fit", "lr_find", "load", "Run"]


def __getattr__(name: str):
    if name in __all__:
        from trainer import api

        return getattr(api, name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")

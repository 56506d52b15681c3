from trainer.cli import app

if __name__ == "__main__":  # not in a worker process that imports it (the scan's)
    app(prog_name="trainer")

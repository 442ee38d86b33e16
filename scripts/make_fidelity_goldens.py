"""Generate the fidelity goldens in tests/golden/fidelity/ by RUNNING the original authors' code once.

Upstream code (checked out outside this repository, e.g. with ``git clone`` into /tmp; never copied here):

* MIG sampler:      yichengchen24/MIG @ 969eb5383623b977807a181b25f3b66e2d04dab6  (mig/sampler.py, mig/label.py)
* DEITA filter:     hkust-nlp/deita @ b279f2c329b403d2612a61e270c8d2a2eeaed6f4  (src/deita/selection/filter/)
* partition entropy: UmeanNever/NovelSum @ b5949626d88361b5ab50117e7963a08f63de601c  (entropy.py)
* QDIT has no released code: its golden comes from ``qdit_transcription`` below, a plain (non-lazy) greedy
  written straight from the paper's objective f(S) = (1 - alpha) * d(S) + alpha * q(S) (sec. 3), with
  divbench's documented scale reading (d averaged over the reference, quality min-max scaled).

Usage::

    python scripts/make_fidelity_goldens.py --mig /tmp/up/MIG --deita /tmp/up/deita --novelsum /tmp/up/NovelSum

Needs torch, pandas, faiss, pydantic, rich and sentence-transformers (the MIG package imports them). The MIG
package also imports ``jsonlines`` for its file IO, which the sampler never uses; when it is not installed an
empty module stands in for it. The label graph's sentence embedder is replaced by a lookup of fixed label
vectors, so MIG's own ``calc_weighted_adjacency_matrix`` thresholds known similarities; and ``mig.data.Dataset``
(a ``list[DataPoint]`` alias that sampler.py subscripts again, an import error on Python 3.11) is set to
``list``, which only changes type annotations.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden" / "fidelity"
UPSTREAM = {
    "mig": "yichengchen24/MIG@969eb5383623b977807a181b25f3b66e2d04dab6",
    "deita": "hkust-nlp/deita@b279f2c329b403d2612a61e270c8d2a2eeaed6f4",
    "entropy": "UmeanNever/NovelSum@b5949626d88361b5ab50117e7963a08f63de601c",
    "qdit": "paper transcription (Bukharin et al. 2024, sec. 3); no released code",
}


def clustered(rng: np.random.Generator, n: int, d: int, centres: int, spread: float) -> np.ndarray:
    c = rng.normal(size=(centres, d))
    return (c[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, d))).astype(np.float32)


def mig_case(repo: Path) -> dict:
    sys.path.insert(0, str(repo))
    if "jsonlines" not in sys.modules:
        try:
            import jsonlines  # noqa: F401
        except ImportError:
            sys.modules["jsonlines"] = types.ModuleType("jsonlines")
    import mig.data
    import torch
    from mig.data import DataPoint

    # mig/sampler.py annotates with ``Dataset[DataPoint]`` where ``Dataset = list[DataPoint]``, which Python
    # 3.11 rejects at import; an unparametrised alias changes nothing but that annotation.
    mig.data.Dataset = list
    from mig.label import SimLabelGraph
    from mig.sampler import MIGSampler

    rng = np.random.default_rng(13)
    n_labels, n_rows = 30, 300
    vectors = clustered(rng, n_labels, 8, 6, 0.25)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    names = [f"t{i:02d}" for i in range(n_labels)]  # sorted order = id order, as MIG sorts its label set
    labels = [sorted(rng.choice(n_labels, size=rng.integers(1, 5), replace=False).tolist()) for _ in range(n_rows)]
    labels[7] = labels[3]  # an exact duplicate row: ties go to the lower index
    quality = np.round(rng.uniform(1, 6, n_rows), 2)
    quality[7] = quality[3]

    class LookupEncoder:  # stands in for the SentenceTransformer: fixed unit vectors per label name
        def encode(self, items, convert_to_tensor=True, normalize_embeddings=True):
            return torch.tensor(np.stack([vectors[names.index(t)] for t in items]))

    out: dict = {"labels": labels, "label_vectors": vectors.tolist(), "quality": quality.tolist(),
                 "threshold": 0.9, "k": 40, "upstream": UPSTREAM["mig"]}
    for norm in (False, True):
        graph = SimLabelGraph.__new__(SimLabelGraph)
        graph._labels, graph._label_to_index, graph._W = [], {}, None
        graph._sim_threshold, graph._embedding_model = 0.9, LookupEncoder()
        pool = [DataPoint(labels=[names[j] for j in labs], score=float(s), raw={"row": i})
                for i, (labs, s) in enumerate(zip(labels, quality, strict=True))]
        graph._build_from_dataset(pool)
        sampler = MIGSampler(graph, norm=norm)
        sampler.device = torch.device("cpu")
        out[f"picks_norm_{str(norm).lower()}"] = [dp.raw["row"] for dp in sampler.sample(pool, 40)]
        w = graph.wam.numpy()
        out["edges"] = int(((w > 0).sum() - n_labels) // 2)
    return out


def deita_case(repo: Path) -> dict:
    sys.path.insert(0, str(repo / "src"))
    import deita.pipeline  # noqa: F401  (import the package first: filter <-> pipeline import each other)
    import pandas as pd
    from deita.selection.filter.combined_filter import Combined_Filter

    rng = np.random.default_rng(21)
    emb = clustered(rng, 200, 16, 25, 0.3)
    quality = rng.integers(1, 7, 200).astype(float)  # few distinct values: many ties
    df = pd.DataFrame({"embedding": list(emb), "quality": [[q] for q in quality]})
    df["idx"] = df.index
    filt = Combined_Filter(threshold=0.9, data_size=30, sort_key=["quality"], chunk_size=100000, device="cpu")
    picks = filt.filter(df)["idx"].tolist()
    return {"embeddings": emb.tolist(), "quality": quality.tolist(), "threshold": 0.9, "k": 30, "picks": picks,
            "upstream": UPSTREAM["deita"]}


def entropy_case(repo: Path) -> dict:
    sys.path.insert(0, str(repo))
    from entropy import kmeans_entropy

    rng = np.random.default_rng(42)
    ref = clustered(rng, 1000, 8, 12, 0.5) * rng.uniform(0.5, 2, size=(1000, 1)).astype(np.float32)
    subsets = {"random": rng.choice(1000, 200, replace=False).tolist(), "head": list(range(120)),
               "repeated": np.repeat(rng.choice(1000, 20, replace=False), 5).tolist()}
    expected = {f"{name},n_clusters={k}": kmeans_entropy(k, ref, ref[rows])
                for name, rows in subsets.items() for k in (10, 50)}
    return {"reference": ref.tolist(), "subsets": subsets, "expected": expected, "upstream": UPSTREAM["entropy"]}


def qdit_transcription(emb: np.ndarray, quality: np.ndarray, k: int, alpha: float) -> list[int]:
    """Plain greedy argmax of the marginal gain of f(S) = (1 - alpha) d(S) + alpha q(S), float64, no laziness."""
    unit = emb.astype(np.float64) / np.linalg.norm(emb.astype(np.float64), axis=1, keepdims=True)
    sim = unit @ unit.T  # sim[r, c]: reference row r, candidate c (the reference is the pool)
    q = (quality - quality.min()) / (quality.max() - quality.min())
    cover, picks = np.zeros(len(emb)), []
    for _ in range(k):
        d_gain = np.maximum(sim - cover[:, None], 0).sum(axis=0) / len(emb)
        gain = (1 - alpha) * d_gain + alpha * q
        gain[picks] = -np.inf
        picks.append(int(np.argmax(gain)))
        cover = np.maximum(cover, sim[:, picks[-1]])
    return picks


def qdit_case() -> dict:
    rng = np.random.default_rng(7)
    emb = clustered(rng, 200, 16, 10, 0.6)
    quality = np.round(rng.normal(5, 2, 200), 3)
    picks = {f"alpha={a:g}": qdit_transcription(emb, quality, 30, a) for a in (0.0, 0.5, 0.9)}
    return {"embeddings": emb.tolist(), "quality": quality.tolist(), "k": 30, "picks": picks,
            "upstream": UPSTREAM["qdit"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mig", type=Path, required=True, help="checkout of yichengchen24/MIG")
    ap.add_argument("--deita", type=Path, required=True, help="checkout of hkust-nlp/deita")
    ap.add_argument("--novelsum", type=Path, required=True, help="checkout of UmeanNever/NovelSum")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    OUT.mkdir(parents=True, exist_ok=True)
    cases = {"mig": lambda: mig_case(args.mig), "deita": lambda: deita_case(args.deita),
             "entropy": lambda: entropy_case(args.novelsum), "qdit": qdit_case}
    for name, make in cases.items():
        (OUT / f"{name}.json").write_text(json.dumps(make()))
        logging.info("wrote %s", OUT / f"{name}.json")


if __name__ == "__main__":
    main()

"""Write a bigger synthetic input (Census-shaped SOMA store or h5ad directory) for benchmarks.

Cells are resampled from real Kang 2018 PBMCs with binomial thinning (see
``scfm.corpus.synthetic``); every cell is labelled ``assay = "synthetic"``.

    python benchmarks/make_synthetic_corpus.py --cells 1000000 --format soma --out bench/census-1m
"""

from __future__ import annotations

from scfm.corpus.synthetic import main

if __name__ == "__main__":
    main()

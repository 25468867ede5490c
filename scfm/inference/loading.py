"""One function to get a model from whatever the user has: :func:`load_model`.

It returns a :class:`~scfm.inference.handle.Model`: the module, where it came from, and the
inference API as methods. Accepted specs:

* an :class:`~scfm.model.XTrimoGene` (used as is),
* a local scfm checkpoint folder or its ``model.pt`` (``scfm.model.save_checkpoint``), or a
  checkpoint folder on an object store (``s3://bucket/ray/run/checkpoint_…``, downloaded first),
* an MLflow model URI, ``models:/name/version`` (also ``models:/name@alias``, ``runs:/id/model``),
  downloaded from the tracking server's registry (no pickled model flavour: plain files),
* the official scFoundation ``models.ckpt`` (``gene`` / ``cell`` / ``rde`` entries); pick the
  entry with ``variant`` (``cell`` for cell embeddings, ``gene`` for gene embeddings).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from scfm.model.checkpoint import (
    CHECKPOINT_FORMAT,
    WEIGHTS_FILE,
    CheckpointError,
    load_checkpoint,
    load_weights_only,
    official_model,
)
from scfm.model.xtrimogene import XTrimoGene
from scfm.runtime import resolve_device
from scfm.storage import download_dir, exists, is_uri, redact_uri

if TYPE_CHECKING:
    from scfm.inference.handle import Model

log = logging.getLogger(__name__)

MODEL_URI_SCHEMES = ("models:/", "runs:/")


@dataclass(frozen=True)
class ModelInfo:
    """Where a model came from; recorded in ``adata.uns["scfm"]`` and MLflow params."""

    source: str  # the spec as given (path, URI, or "in-memory")
    kind: str  # "scfm-checkpoint", "mlflow", "official", "in-memory"
    name: str  # preset / config name
    version: str = ""  # registry version, or "" when not applicable
    variant: str = ""  # official entry (cell / rde / gene)
    config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (h5ad- and JSON-writable)."""
        return asdict(self)


def load_model(
    spec: str | Path | XTrimoGene,
    *,
    device: str | torch.device = "auto",
    variant: str = "cell",
    **overrides: Any,
) -> Model:
    """A model on ``device`` (eval mode when loaded from a file or URI), ready for inference.

    Parameters
    ----------
    spec
        See the module docstring.
    device
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:1"``, …
    variant
        Entry of an official ``models.ckpt``; ignored for scfm checkpoints.
    **overrides
        Layout-preserving config changes for scfm checkpoints, e.g. ``dec_attention="sdpa"``.

    Returns
    -------
    Model
        ``.module`` (the :class:`XTrimoGene`), ``.info``, and ``.embed`` / ``.gene_embeddings``
        / ``.enhance``.

    Examples
    --------
    >>> m = load_model("models:/scfm-10m/3")                          # doctest: +SKIP
    >>> m.embed(adata); m.enhance(adata, fold=10)                     # doctest: +SKIP
    >>> genes = load_model("models.ckpt", variant="gene", device="cuda")  # doctest: +SKIP
    """
    from scfm.inference.handle import Model

    return Model(*load_model_with_info(spec, device=device, variant=variant, **overrides))


def load_model_with_info(
    spec: str | Path | XTrimoGene,
    *,
    device: str | torch.device = "auto",
    variant: str = "cell",
    **overrides: Any,
) -> tuple[XTrimoGene, ModelInfo]:
    """:func:`load_model` plus a :class:`ModelInfo` describing the source."""
    from scfm.inference.handle import Model

    dev = resolve_device(device)
    if isinstance(spec, Model):
        return spec.module.to(dev), spec.info
    if isinstance(spec, XTrimoGene):
        info = ModelInfo(
            "in-memory", "in-memory", spec.cfg.name, config=plain_types(spec.cfg.to_dict())
        )
        return spec.to(dev), info  # the caller's model keeps its train/eval mode
    if isinstance(spec, torch.nn.Module):
        raise TypeError(f"expected an XTrimoGene model, got {type(spec).__name__}")
    text = str(spec)
    if text.startswith(MODEL_URI_SCHEMES):
        model, info = _from_mlflow(text, overrides)
    elif is_uri(text):  # a checkpoint folder on an object store (s3://…/checkpoint_000004)
        with tempfile.TemporaryDirectory(prefix="scfm-model-") as tmp:
            model, info = _from_path(download_dir(text, tmp), variant, overrides)
        info = replace(info, source=redact_uri(text))
    else:
        model, info = _from_path(Path(text).expanduser(), variant, overrides)
    return model.to(dev).eval(), info


def _from_mlflow(uri: str, overrides: dict[str, Any]) -> tuple[XTrimoGene, ModelInfo]:
    import mlflow

    from scfm.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    with tempfile.TemporaryDirectory(prefix="scfm-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except Exception as exc:  # MlflowException, OSError: name the URI and the store
            raise CheckpointError(
                f"cannot fetch {uri} from the MLflow tracking server {tracking_uri()}: {exc}"
                " (check the name/version with `mlflow models` or the UI, and MLFLOW_TRACKING_URI)"
            ) from exc
        folder = local if (local / WEIGHTS_FILE).exists() else _find_checkpoint(local, uri)
        model, ckpt = load_checkpoint(folder, **overrides)
    parts = uri.removeprefix("models:/").split("/")
    version = parts[1] if uri.startswith("models:/") and len(parts) > 1 else ""
    info = ModelInfo(
        uri,
        "mlflow",
        model.cfg.name,
        version=version,
        config=plain_types(ckpt["config"]),
        metadata=plain_types(ckpt["metadata"]),
    )
    return model, info


def _find_checkpoint(root: Path, uri: str) -> Path:
    found = sorted(p.parent for p in root.rglob(WEIGHTS_FILE))
    if not found:
        raise CheckpointError(f"{uri} holds no scfm checkpoint ({WEIGHTS_FILE} not found)")
    return found[0]


def _from_path(path: Path, variant: str, overrides: dict[str, Any]) -> tuple[XTrimoGene, ModelInfo]:
    if not path.exists():
        raise FileNotFoundError(
            f"model {str(path)!r} not found: pass a checkpoint folder, its model.pt, an official "
            "models.ckpt, or an MLflow URI such as models:/name/1"
        )
    if path.is_dir():
        if not (path / WEIGHTS_FILE).exists():
            raise CheckpointError(
                f"{path} is a folder without {WEIGHTS_FILE}: not an scfm checkpoint folder"
            )
        return _from_scfm(path, overrides)
    payload = load_weights_only(path)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        del payload
        return _from_scfm(path, overrides)
    if overrides:
        raise TypeError(f"config overrides {sorted(overrides)} apply to scfm checkpoints only")
    model = official_model(payload, variant, source=str(path))
    info = ModelInfo(
        str(path),
        "official",
        model.cfg.name,
        variant=variant,
        config=plain_types(model.cfg.to_dict()),
    )
    return model, info


def _from_scfm(path: Path, overrides: dict[str, Any]) -> tuple[XTrimoGene, ModelInfo]:
    model, ckpt = load_checkpoint(path, **overrides)
    info = ModelInfo(
        str(path),
        "scfm-checkpoint",
        model.cfg.name,
        config=plain_types(ckpt["config"]),
        metadata=plain_types(ckpt["metadata"]),
    )
    return model, info


def plain_types(d: Any) -> Any:
    """Metadata reduced to h5ad-writable plain types (None → "")."""
    if isinstance(d, dict):
        return {str(k): plain_types(v) for k, v in d.items()}
    if isinstance(d, list | tuple):
        return [plain_types(v) for v in d]
    if d is None:
        return ""
    if isinstance(d, str | int | float | bool):
        return d
    return str(d)


def is_official_spec(spec: str | Path | XTrimoGene) -> bool:
    """Whether ``spec`` names an official scFoundation file (not an scfm checkpoint or URI).

    Reads only the file's structure (``torch.load`` memory-maps the tensors).
    """
    if isinstance(spec, torch.nn.Module):
        return False
    text = str(spec)
    path = Path(text).expanduser()
    if text.startswith(MODEL_URI_SCHEMES) or not path.is_file():
        return False
    payload = load_weights_only(path)
    return not (isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT)


def check_model_spec(spec: str | Path) -> None:
    """Fail early (on the driver) for a local model path that does not exist."""
    text = str(spec)
    if text.startswith(MODEL_URI_SCHEMES):
        return
    if is_uri(text):
        if not exists(text):
            raise FileNotFoundError(f"model {redact_uri(text)!r} not found")
        return
    if not Path(text).expanduser().exists():
        raise FileNotFoundError(
            f"model {text!r} not found: pass a checkpoint folder, its model.pt, an official "
            "models.ckpt, or an MLflow URI such as models:/name/1"
        )

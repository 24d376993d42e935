"""Write the demo model's ONNX export (``demo-model/onnx``), shipped as package data so a plain
install (no torch) runs ``searchlite demo`` on the ONNX engine.

Run from a source checkout with the torch extra installed, after the demo model changes::

    python -m searchlite.sample_data.export_demo_onnx

The export is validated against the torch model as every export is (fp32, cosine >= 0.99999).
"""

from __future__ import annotations

import json
import logging


def main() -> None:
    from searchlite.models.onnx_export import export_model
    from searchlite.models.registry import load_embedder
    from searchlite.sample_data import DEMO_MODEL_DIR

    logging.basicConfig(level=logging.INFO)
    emb = load_embedder("demo", device="cpu", precision="fp32", runtime="torch")
    meta = export_model(emb, DEMO_MODEL_DIR / "onnx")
    print(json.dumps({k: meta.get(k) for k in ("model_id", "valid", "reason", "image_check")}, indent=1))
    if not meta["valid"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

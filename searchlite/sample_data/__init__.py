"""Sample data shipped with the package: the captioned image generator and the bundled demo model
(a small SigLIP trained on the generator's ``train`` split by ``sample_data/train_demo.py``)."""

from pathlib import Path

#: The bundled demo model (transformers SiglipModel + SentencePiece tokenizer, 4 MB).
DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo-model"

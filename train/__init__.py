"""Training, evaluation and translation for jaxattn models (`python -m train.translate`)."""

"""Training, evaluation, checkpoints and distributed helpers. Import the submodule you need."""

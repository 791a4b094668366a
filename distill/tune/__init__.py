"""`distill tune`: an optuna search over a recipe (`search`) and its report (`report`)."""

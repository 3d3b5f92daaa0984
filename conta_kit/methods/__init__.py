"""De-confounding methods that plug into the round: :mod:`~conta_kit.methods.conta` (backdoor adjustment
over confounder prototypes, rounds >= 1) and :mod:`~conta_kit.methods.wood` (W-OoD fine-tuning of the
classifier, a stage of any round)."""

"""The privileged-access control: cross-prediction between two models.

Each model is trained to report its own neuron (self) and the other model's neuron (other) on the
same texts. A report counts as self-report only where the model beats the other model at
reporting its own neuron: `experiment` (the TOML form), `labels` (each model's neuron labelled once
on the shared texts), `matrix` (skills and paired differences from the saved predictions), `render`
(report.md and its figure), `pipeline` (`mechcheck run` for a cross-prediction experiment). A cell of
the 2×2 matrix is an ordinary training run (`mechcheck.train.cell.train_run`) on the reporter's bench
whose target set is the label model's.
"""

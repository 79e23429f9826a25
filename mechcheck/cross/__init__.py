"""The privileged-access control: cross-prediction between two models.

Each model is trained to report its own neuron (self) and the other model's neuron (other) on the
same texts. A report counts as self-report only where the model beats the other model at
reporting its own neuron. The experiment is an ordinary one with a `[cross]` table and one
`[[variant]]` per model (`mechcheck.experiment.crossed`): each of its runs `<reporter>/<label>/` is an
ordinary pipeline run whose fixed labels come from the label model's neuron (`[labels]`, the labels
stage, `mechcheck.train.labels`). Here: `matrix` (skills and paired differences from the cells' saved
predictions) and `render` (results.json, report.md and its figure).
"""

"""Training and evaluation of spectnode's classifiers.

:mod:`spectnode.training.metrics` holds the evaluation metrics the two papers
report (accuracy, precision, recall/sensitivity, specificity, F1, ROC AUC and
the confusion matrix) and the PNG plots of them. It needs numpy and Pillow only.
"""

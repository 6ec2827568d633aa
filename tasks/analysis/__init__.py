"""Helpers, concern analysis: scores by matching rule, errors by kind and the worst sentences (`errors`),
training sentences whose labels are probably wrong, from out-of-fold predictions and cleanlab
(`label_issues`)."""

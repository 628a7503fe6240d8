"""Datasets and target problems (stages `download`, `prepare`, `prepare_defects`): raw sources,
target specs, the prepared :class:`~seam.data.problem.TargetProblem`, batched augmentation."""

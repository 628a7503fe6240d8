"""The SeaM search (stages `reengineer@<target>`, `evaluate`): granularities, the epoch loop and
its stopping rules, the candidate model, the artifact, accuracy rules."""

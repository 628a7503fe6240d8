"""Reusing a pretrained model by fine-tuning (stages `retrain@<target>`, `finetune_*`,
`adversarial`, `defects`): standard fine-tuning, ReMoS, SeaM's flow, the attack."""

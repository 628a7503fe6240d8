"""The pretrained model (stage `fetch_model`): the registry and its architectures, fetching and
checking any classifier, ``.pt2`` archives, and the masks SeaM attaches to any model's weights."""

"""``python -m qgface.config``: every key of the configuration tree, its default and its meaning."""

from qgface.config.loading import describe_keys

for key, default, meaning in describe_keys():
    print(f"{key} = {default}\n    {meaning}")

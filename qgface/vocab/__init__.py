"""The project's vocabularies, each stated once (torch-free, importable from any floor).

- ``benchmarks``: benchmark names, their registry, the defaults, and the fixed names of their data;
- ``choices``: the values a config choice key accepts, read by the config and by the component;
- ``synthetic``: the default size of the synthetic mixed-quality dataset;
- ``columns``: the columns of the paper's table and of results.csv's headline block.
"""

"""Benchmarks on the shared public datasets: dataset loaders (``datasets/``), benchmark recipes (``recipes.py``:
recommendation on Amazon Scientific, outfits on Polyvore, coupons on Complete Journey, basket complements),
recommendation domains for transfer (``domains.py``) and the workflows behind ``textguide train`` /
``textguide evaluate`` / ``textguide transfer`` and the scripts' report tables (``workflows.py``).

Not the serving path: nothing outside this package imports it, except the command line, lazily, for the
commands that train or evaluate on the benchmark datasets. Its extra dependencies are the ``bench`` extra.
"""

"""``python -m bench``: the performance table of issue 9, each figure next to a baseline
measured in the same run (see ``bench/__main__.py``)."""

"""Approximate nearest-neighbour search that follows the collection: exact while small, IVF when large.

:mod:`~clipdex.ann.base` (the immutable index of one generation, and its files),
:mod:`~clipdex.ann.live` (a base plus the changes since, as readers search it),
:mod:`~clipdex.ann.build` (building from streamed vectors, measuring recall),
:mod:`~clipdex.ann.policy` (which kind, what shape, when to rebuild). The library's side
(the change log, the record of the file) is :mod:`clipdex.library.indexkeeper`.
"""

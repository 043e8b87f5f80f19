"""PACS query/retrieve backfill and batch runs (``spectnode backfill``, ``spectnode classify DIR --send``).

* :mod:`~spectnode.backfill.query`: associations and C-FIND;
* :mod:`~spectnode.backfill.retrieve`: C-GET / C-MOVE of series;
* :mod:`~spectnode.backfill.polite`: time window, rate limit, shared backoff;
* :mod:`~spectnode.backfill.progress`: progress bar or JSON lines, the summary;
* :mod:`~spectnode.backfill.run`: the batch loop.
"""

"""Training: the train state and pure step (``step``), device placement (``sharding``), the
optimizer (``optim``), config checks, the logging window (``monitor``) and the run (``loop``).

Start reading at ``loop.train_and_evaluate`` (what ``train.py`` runs) and ``step.train_step``.
"""

"""``minerwatch run``: the detection daemon.

* ``wiring``: builds every part and hands it in (the only place that does);
* ``service``: the main thread (collector threads, signals, sd_notify, watchdog, health);
* ``worker``: the worker thread, routing events to its parts and running the periodic pass;
* its parts: ``containers`` (ContainerRegistry), ``tracker`` (ProcessTracker), ``behaviour``
  (BehaviourModel), ``emitter`` (response, then alert);
* ``sd_notify`` and ``metrics``: what systemd and Prometheus see.
"""

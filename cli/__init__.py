"""The roof: the `loraq` command, the embedded mode and the launching and stopping of loraq's processes.

Nothing below imports this package; it imports the layers below it (api, worker, training, loraq, models).
"""

import signal

pytest_plugins = ("tests.fix_clusters",)

# Started as a background job, this suite inherits SIGINT ignored and hands that to every
# pgcopy it starts: Python then installs no KeyboardInterrupt, and the Ctrl-C tests would
# send signals nothing hears (recover ran to the end, exit 0).  Run as a terminal's
# foreground job would be: a handler of ours becomes the default again in each child.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

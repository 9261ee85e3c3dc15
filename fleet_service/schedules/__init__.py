"""Broadcast schedules: programme slots assigned to stations or region subtrees, pushed to the
receivers, which run them by their own clock even while 4G is down."""

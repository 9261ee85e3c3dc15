"""``loa dashboards``: build Loa's Grafana dashboards (dashboards/) and publish them to a
running Grafana through grafana-client."""

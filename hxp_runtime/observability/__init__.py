"""What the metrics host watches: scrape targets, alert rules, dashboards, all from hxp.yml."""

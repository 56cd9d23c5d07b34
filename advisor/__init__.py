"""Right-sizing: from a measured run to the chart values that meet an SLO at the lowest cost
(`kindling advise`)."""

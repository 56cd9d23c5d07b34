"""kindling.loadtest"""

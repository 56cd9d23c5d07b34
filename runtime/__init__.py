"""kindling.runtime"""

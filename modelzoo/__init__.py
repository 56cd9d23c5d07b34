"""kindling.modelzoo"""

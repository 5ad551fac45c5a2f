"""tritium.integrations"""

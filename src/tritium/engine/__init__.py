"""tritium.engine"""

"""tritium.layers"""

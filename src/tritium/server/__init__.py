"""tritium.server"""

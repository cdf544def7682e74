"""The web room: trace pages behind signed links.

links.py makes and checks the signed, expiring token a link carries (which trace, nothing more);
pages.py is the small HTTP server (`web.listen`) that answers a valid link with the trace's page
and a bad or expired one with 403.
"""

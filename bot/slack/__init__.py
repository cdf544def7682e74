"""The Slack room: everything between Slack and whodid's answers.

app.py is the Bolt app (`/whodid`, button clicks, Socket Mode or HTTP); http_mode.py serves it over
HTTP when Socket Mode is off; ask.py is the question syntax `/whodid` and the trace page share;
blocks.py draws answers as Block Kit messages; buttons.py is a button's signed, untrusted state;
manifest.yml is the app manifest a workspace admin pastes. Listeners only translate Slack <-> the
tracer; they hold no logic the CLI lacks.
"""

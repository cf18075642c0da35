"""The app's screens: home (profiles and runs), profile form, dashboard, resume, dialogs."""

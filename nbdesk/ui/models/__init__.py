"""The window's models: Qt objects holding state that widgets read and follow."""

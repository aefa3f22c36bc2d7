"""The two persona stages of the method: Text-to-Persona (who reads, writes, likes or dislikes a text) and
Persona-to-Persona (the people in close relationships with a persona, hop after hop)."""

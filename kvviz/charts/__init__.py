"""Pure figure builders: data in (a Trace, records, arrays), plotly figure out. No streamlit."""

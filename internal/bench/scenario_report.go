package bench

import (
	"fmt"
	"io"
)

// table is one table of a scenario, as text cells, for the text and the HTML report.
type table struct {
	Title  string
	Header []string
	Rows   [][]string
	Note   string
}

// scenarioTables are the tables of the update and scale scenarios that ran.
func scenarioTables(res *Result) []table {
	var out []table
	for _, t := range []*table{updateTable(res), scaleTable(res)} {
		if t != nil {
			out = append(out, *t)
		}
	}
	return out
}

// writeScenarioTables writes the scenarios' tables as markdown.
func writeScenarioTables(w io.Writer, res *Result) {
	for _, t := range scenarioTables(res) {
		fmt.Fprintf(w, "\n### %s\n\n", t.Title)
		writeGrid(w, t.Header, t.Rows)
		fmt.Fprintf(w, "\n%s\n", t.Note)
	}
}
